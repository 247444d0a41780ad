package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// A log-linear latency histogram in nanoseconds: exact below 2048 ns, then
// 1024 buckets per power of two, so that every value is known within 1/1024
// (under 0.1 %).  Recording is one atomic add, so every reader goroutine can
// share it; memory is fixed (about 350 KiB) whatever the number of samples.

const (
	subBits     = 10
	subBuckets  = 1 << subBits
	maxShift    = 40
	bucketCount = 2*subBuckets + maxShift*subBuckets
)

type histogram struct {
	counts [bucketCount]int64
	total  int64
	sum    int64
	min    int64
	max    int64
}

func newHistogram() *histogram {
	return &histogram{min: math.MaxInt64}
}

func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	if shift > maxShift {
		return bucketCount - 1
	}
	return 2*subBuckets + (shift-1)*subBuckets + int(v>>uint(shift)) - subBuckets
}

// bucketHigh is the highest value that falls in bucket i.
func bucketHigh(i int) uint64 {
	if i < 2*subBuckets {
		return uint64(i)
	}
	shift := (i-2*subBuckets)/subBuckets + 1
	m := uint64((i-2*subBuckets)%subBuckets + subBuckets)
	return ((m + 1) << uint(shift)) - 1
}

func (h *histogram) record(ns int64) {
	if ns < 0 {
		ns = 0
	}
	atomic.AddInt64(&h.counts[bucketOf(uint64(ns))], 1)
	atomic.AddInt64(&h.total, 1)
	atomic.AddInt64(&h.sum, ns)
	for {
		m := atomic.LoadInt64(&h.max)
		if ns <= m || atomic.CompareAndSwapInt64(&h.max, m, ns) {
			break
		}
	}
	for {
		m := atomic.LoadInt64(&h.min)
		if ns >= m || atomic.CompareAndSwapInt64(&h.min, m, ns) {
			break
		}
	}
}

// percentile is the smallest value v such that p % of the samples are <= v
// (within the bucket's precision, never above the exact maximum).
func (h *histogram) percentile(p float64) int64 {
	total := atomic.LoadInt64(&h.total)
	if total == 0 {
		return 0
	}
	target := int64(math.Ceil(p / 100 * float64(total)))
	if target < 1 {
		target = 1
	}
	var seen int64
	for i := range h.counts {
		seen += atomic.LoadInt64(&h.counts[i])
		if seen >= target {
			v := int64(bucketHigh(i))
			if m := atomic.LoadInt64(&h.max); v > m {
				v = m
			}
			return v
		}
	}
	return atomic.LoadInt64(&h.max)
}

func micros(ns int64) float64 {
	return math.Round(float64(ns)/100) / 10
}

// latencyJSON gives the same keys as tcpdemo-client's latency_us.
func (h *histogram) latencyJSON() map[string]float64 {
	out := map[string]float64{"count": 0}
	keys := []struct {
		name string
		p    float64
	}{{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p99.9", 99.9}}
	total := atomic.LoadInt64(&h.total)
	out["count"] = float64(total)
	for _, k := range keys {
		out[k.name] = micros(h.percentile(k.p))
	}
	if total == 0 {
		out["min"], out["mean"], out["max"] = 0, 0, 0
		return out
	}
	out["min"] = micros(atomic.LoadInt64(&h.min))
	out["mean"] = micros(atomic.LoadInt64(&h.sum) / total)
	out["max"] = micros(atomic.LoadInt64(&h.max))
	return out
}
