// Command tcpdemo-loadgen drives a tcpdemo (or reference) server with Submits
// and checks every SubmitAck, like tcpdemo-client, but without the pauses of
// a garbage-collected, JIT-compiled Python client: the harness uses it
// (bench --client go) to measure the server's latency tails, where the PyPy
// client's own pauses of tens of milliseconds dominated the figures.
//
// Load shapes: --rate R is the open loop (Submit k of the run is due at k/R
// seconds, round robin over the connections, latency counted from that time,
// so a late sender cannot hide its lateness); otherwise --window W keeps W
// Submits in flight per connection (0: as fast as the socket takes them).
// The report (--json) has the keys of tcpdemo-client --json that the harness
// reads.  Exit status: 0 without errors, 1 with errors, 2 if it could not
// start.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const version = "tcpdemo-loadgen 1"

type config struct {
	host           string
	port           int
	connections    int
	duration       float64
	warmup         float64
	rate           float64
	window         int
	payloadSize    int
	jsonOut        bool
	quiet          bool
	drainTimeout   float64
	connectTimeout float64
	failOnResult   bool
	tickUs         float64
}

func (c *config) openLoop() bool { return c.rate > 0 }

func parseEndpoint(endpoint string) (string, int, error) {
	s := strings.TrimPrefix(endpoint, "tcp:")
	if n, err := strconv.Atoi(s); err == nil {
		return "127.0.0.1", n, nil
	}
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("bad --port %q: want tcp:HOST:PORT, HOST:PORT or PORT", endpoint)
	}
	host := strings.Trim(strings.ReplaceAll(s[:i], `\:`, ":"), "[]")
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || host == "" {
		return "", 0, fmt.Errorf("bad --port %q: want tcp:HOST:PORT, HOST:PORT or PORT", endpoint)
	}
	return host, n, nil
}

func parseArgs(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("tcpdemo-loadgen", flag.ContinueOnError)
	endpoint := fs.String("port", "tcp:127.0.0.1:8888", "server: tcp:HOST:PORT, HOST:PORT or PORT")
	host := fs.String("host", "", "server host (overrides the one in --port)")
	fs.IntVar(&c.connections, "connections", 100, "connections")
	fs.Float64Var(&c.duration, "duration", 10, "seconds of measured sending")
	fs.Float64Var(&c.warmup, "warmup", 0, "seconds of the same load first, not measured")
	fs.Float64Var(&c.rate, "rate", 0, "open loop: Submits per second over all connections")
	fs.IntVar(&c.window, "window", 1000, "closed loop: Submits in flight per connection (0: unbounded)")
	fs.IntVar(&c.payloadSize, "payload-size", -1, "payload bytes [random 15-30 byte codenames]")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as JSON")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress on stderr (there is none anyway)")
	fs.Float64Var(&c.drainTimeout, "drain-timeout", 5, "give up on owed acks after this many quiet seconds")
	fs.Float64Var(&c.connectTimeout, "connect-timeout", 10, "seconds to connect")
	fs.BoolVar(&c.failOnResult, "fail-on-result", false, "count a non-zero result as an error")
	fs.Float64Var(&c.tickUs, "tick-us", 100, "open loop: microseconds between the sender's wake-ups, at least")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *showVersion {
		fmt.Printf("%s (Go %s)\n", version, strings.TrimPrefix(runtime.Version(), "go"))
		os.Exit(0)
	}
	h, p, err := parseEndpoint(*endpoint)
	if err != nil {
		return nil, err
	}
	c.host, c.port = h, p
	if *host != "" {
		c.host = *host
	}
	if c.connections < 1 || c.duration < 0 || c.warmup < 0 || c.rate < 0 || c.window < 0 {
		return nil, errors.New("--connections must be >= 1; --duration, --warmup, --rate, --window >= 0")
	}
	return c, nil
}

// Payloads: the reference client's random four-part codenames of 15-30 bytes.

var words = [4][]string{
	{"amber", "brisk", "calm", "dusky", "eager", "fuzzy", "gentle", "hollow"},
	{"iron", "jolly", "lunar", "mellow", "noble", "olive", "proud", "quiet"},
	{"raven", "salmon", "tiger", "walrus", "falcon", "badger", "otter", "lynx"},
	{"anchor", "beacon", "canyon", "delta", "ember", "fjord", "glacier", "harbor"},
}

func codenames(count int, rng *rand.Rand) [][]byte {
	names := make([][]byte, 0, count)
	for len(names) < count {
		parts := make([]string, 4)
		for i, w := range words {
			parts[i] = w[rng.Intn(len(w))]
		}
		name := strings.Join(parts, "-")
		if len(name) >= 15 && len(name) <= 30 {
			names = append(names, []byte(name))
		}
	}
	return names
}

func fixedPayload(size int) []byte {
	pattern := "tcpdemo-payload-"
	return []byte(strings.Repeat(pattern, size/len(pattern)+1)[:size])
}

// putID writes the 8-byte id "%08d" of Submit number n (wrapping past 99999999).
func putID(b []byte, n int) {
	n %= 100000000
	for i := 7; i >= 0; i-- {
		b[i] = byte('0' + n%10)
		n /= 10
	}
}

// The run

const (
	submitCmd   = 0x02
	submitAck   = 0x81
	connAck     = 0x80
	ackSize     = 14
	maxMessages = 20
	batchMax    = 512
)

var errorKinds = []string{
	"wrong_id", "wrong_command", "bad_result", "bad_length",
	"unexpected_ack", "truncated_ack", "early_close", "missing_acks",
}

type run struct {
	cfg         *config
	payloads    [][]byte
	start       time.Time // sending began
	measureFrom time.Duration
	sendEnd     time.Duration
	hist        *histogram
	conns       []*connection

	sent, windowSent, answered, acked, windowAcked int64
	lastAck                                        int64 // ns since start
	stopping                                       int32

	mu         sync.Mutex
	errors     int
	byKind     map[string]int
	messages   []string
	results    [256]int64
	maxTickGap time.Duration
	maxLag     time.Duration
}

type sendRecord struct {
	at time.Duration
	n  int
}

type connection struct {
	r     *run
	index int
	conn  *net.TCPConn

	mu      sync.Mutex
	cond    *sync.Cond
	owed    int
	pending []sendRecord // closed loop: send time of each write, oldest first
	fatal   bool
	closing bool
	nextID  int // next Submit number to send (sender only)
	nextAck int // Submit number whose ack is owed next (reader only)
	done    chan struct{}
}

func (r *run) since() time.Duration { return time.Since(r.start) }

func (r *run) problem(c *connection, kind, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors++
	r.byKind[kind]++
	if len(r.messages) < maxMessages {
		r.messages = append(r.messages, fmt.Sprintf("connection %d: %s: %s", c.index, kind, message))
	}
}

// encode appends Submits number first..first+count-1 of a connection.
func (r *run) encode(buf []byte, first, count int) []byte {
	for n := first; n < first+count; n++ {
		p := r.payloads[n%len(r.payloads)]
		size := 4 + 1 + 8 + len(p)
		buf = append(buf, byte(size>>24), byte(size>>16), byte(size>>8), byte(size), submitCmd)
		at := len(buf)
		buf = append(buf, "00000000"...)
		putID(buf[at:], n)
		buf = append(buf, p...)
	}
	return buf
}

// fail marks the connection's stream as not understood and closes it.
func (c *connection) fail(kind, message string) {
	c.mu.Lock()
	c.fatal = true
	owed := c.owed
	c.mu.Unlock()
	c.r.problem(c, kind, fmt.Sprintf("%s; closing the connection with %d ack(s) owed", message, owed))
	c.conn.SetLinger(0)
	c.conn.Close()
	c.cond.Broadcast()
}

func (c *connection) stopped() bool {
	return atomic.LoadInt32(&c.r.stopping) != 0
}

func (c *connection) write(buf []byte) bool {
	if _, err := c.conn.Write(buf); err != nil {
		return false // the reader reports why the connection ended
	}
	return true
}

// openLoop is the open-loop sender: one scheduler for every connection, on a
// thread of its own.  Submit k of the run (k from 0) is due at k/R seconds
// and goes to connection k mod C, as its Submit number k div C + 1.  The
// scheduler sleeps with nanosleep(2) until the next Submit is due (at least
// tick apart), then writes everything due by then, at once if it fell
// behind.  Go's own timers are not used: on Linux they oversleep by about a
// millisecond (epoll_wait's resolution), which would count as latency.
func (r *run) openLoop(tick time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	R := r.cfg.rate
	C := len(r.conns)
	kEnd := int(math.Ceil(r.sendEnd.Seconds() * R))          // first k not sent
	kMeasured := int(math.Ceil(r.measureFrom.Seconds() * R)) // first k measured
	dueAt := func(k int) time.Duration { return time.Duration(float64(k) / R * 1e9) }
	var buf []byte
	lastWake := time.Duration(-1)
	cursor := 0
	for cursor < kEnd {
		next := dueAt(cursor)
		if lastWake >= 0 && next < lastWake+tick {
			next = lastWake + tick
		}
		now := r.since()
		if now < next {
			ts := syscall.NsecToTimespec(int64(next - now))
			for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
			}
			now = r.since()
		}
		if lastWake >= r.measureFrom {
			r.noteTick(now-lastWake, now-dueAt(cursor))
		}
		lastWake = now
		due := int(now.Seconds()*R) + 1 // Submits due by now: k < due
		for due < kEnd && dueAt(due) <= now {
			due++
		}
		if due > kEnd {
			due = kEnd
		}
		if due <= cursor {
			continue
		}
		live := 0
		// Each connection's share of [cursor, due) is contiguous in its own
		// numbering: from ceil((cursor-c)/C) to ceil((due-c)/C) - 1.
		for i := 0; i < C && i < due-cursor; i++ {
			c := r.conns[(cursor+i)%C]
			first := (cursor + i - c.index) / C // cursor+i is congruent to c.index
			last := (due - 1 - c.index) / C
			if due-1 < c.index {
				continue
			}
			count := last - first + 1
			if count <= 0 {
				continue
			}
			c.mu.Lock()
			fatal := c.fatal
			if !fatal {
				c.owed += count
			}
			c.mu.Unlock()
			if fatal {
				continue
			}
			live++
			atomic.AddInt64(&r.sent, int64(count))
			buf = r.encode(buf[:0], first+1, count)
			c.write(buf)
		}
		from := cursor
		if from < kMeasured {
			from = kMeasured
		}
		if due > from {
			atomic.AddInt64(&r.windowSent, int64(due-from))
		}
		cursor = due
		if live == 0 && r.allFatal() {
			return
		}
	}
	// Sending lasts the whole schedule, as tcpdemo-client's does.
	if rest := r.sendEnd - r.since(); rest > 0 {
		time.Sleep(rest)
	}
}

func (r *run) allFatal() bool {
	for _, c := range r.conns {
		if !c.isFatal() {
			return false
		}
	}
	return true
}

func (r *run) noteTick(gap, lag time.Duration) {
	r.mu.Lock()
	if gap > r.maxTickGap {
		r.maxTickGap = gap
	}
	if lag > r.maxLag {
		r.maxLag = lag
	}
	r.mu.Unlock()
}

func (c *connection) isFatal() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fatal
}

// closedLoop keeps the window full (or, unbounded, the socket busy).
func (c *connection) closedLoop() {
	r := c.r
	window := r.cfg.window
	var buf []byte
	for {
		c.mu.Lock()
		for window > 0 && c.owed >= window && !c.fatal && !c.stopped() {
			c.cond.Wait()
		}
		if c.fatal || c.stopped() {
			c.mu.Unlock()
			return
		}
		count := batchMax
		if window > 0 {
			count = window - c.owed
		}
		now := r.since()
		if now >= r.sendEnd {
			c.mu.Unlock()
			return
		}
		c.owed += count
		c.pending = append(c.pending, sendRecord{now, count})
		c.mu.Unlock()
		atomic.AddInt64(&r.sent, int64(count))
		if now >= r.measureFrom {
			atomic.AddInt64(&r.windowSent, int64(count))
		}
		buf = r.encode(buf[:0], c.nextID, count)
		c.nextID += count
		if !c.write(buf) {
			return
		}
	}
}

func showID(b []byte) string {
	for _, ch := range b {
		if ch < 0x20 || ch > 0x7e {
			return fmt.Sprintf("0x%x", b)
		}
	}
	return strconv.Quote(string(b))
}

// read checks every ack of the connection, in order, and records latencies.
func (c *connection) read() {
	defer close(c.done)
	r := c.r
	buf := make([]byte, 64*1024)
	var expected [8]byte
	have := 0 // bytes of buf not yet consumed, from 0
	C := float64(len(r.conns))
	for {
		n, err := c.conn.Read(buf[have:])
		now := r.since()
		have += n
		off := 0
		var answered, measuredAcks int64
		for have-off >= 4 {
			length := int(int32(uint32(buf[off])<<24 | uint32(buf[off+1])<<16 | uint32(buf[off+2])<<8 | uint32(buf[off+3])))
			if length != ackSize {
				why := fmt.Sprintf("a SubmitAck frame is %d bytes", ackSize)
				if length < 5 {
					why = "not a valid frame length"
				}
				end := off + 32
				if end > have {
					end = have
				}
				c.flush(answered, measuredAcks, now)
				c.fail("bad_length", fmt.Sprintf("bad length %d (%s) where the ack for id %08d was owed; bytes %x",
					length, why, c.nextAck%100000000, buf[off:end]))
				return
			}
			if have-off < ackSize {
				break
			}
			frame := buf[off : off+ackSize]
			if frame[4] != submitAck {
				what := ""
				if frame[4] == connAck {
					what = " (a ConnAck)"
				}
				c.flush(answered, measuredAcks, now)
				c.fail("wrong_command", fmt.Sprintf("wrong command byte 0x%02x%s where the ack for id %08d was owed (expected 0x81 SubmitAck); frame %x",
					frame[4], what, c.nextAck%100000000, frame))
				return
			}
			c.mu.Lock()
			owed := c.owed
			c.mu.Unlock()
			if owed-int(answered) <= 0 {
				c.flush(answered, measuredAcks, now)
				c.fail("unexpected_ack", fmt.Sprintf("ack for id %s but no Submit is awaiting an ack; frame %x", showID(frame[5:13]), frame))
				return
			}
			putID(expected[:], c.nextAck)
			if string(frame[5:13]) != string(expected[:]) {
				c.flush(answered, measuredAcks, now)
				c.fail("wrong_id", fmt.Sprintf("wrong id: expected %s, got %s; frame %x", showID(expected[:]), showID(frame[5:13]), frame))
				return
			}
			result := frame[13]
			atomic.AddInt64(&r.results[result], 1)
			if result != 0 && r.cfg.failOnResult {
				r.problem(c, "bad_result", fmt.Sprintf("ack for id %s has result %d (expected 0 = ok); frame %x", showID(expected[:]), result, frame))
				atomic.AddInt64(&r.acked, -1)
				if now >= r.measureFrom {
					atomic.AddInt64(&r.windowAcked, -1)
				}
			}
			// When was it sent (or, in the open loop, due)?
			var sentAt time.Duration
			if r.cfg.openLoop() {
				j := c.nextAck - 1
				sentAt = time.Duration((float64(j)*C + float64(c.index)) / r.cfg.rate * 1e9)
			} else {
				c.mu.Lock()
				p := &c.pending[0]
				sentAt = p.at
				p.n--
				if p.n == 0 {
					c.pending = c.pending[1:]
				}
				c.mu.Unlock()
			}
			if sentAt >= r.measureFrom {
				r.hist.record(int64(now - sentAt))
			}
			if now >= r.measureFrom {
				measuredAcks++
			}
			c.nextAck++
			answered++
			off += ackSize
		}
		c.flush(answered, measuredAcks, now)
		copy(buf, buf[off:have])
		have -= off
		if err != nil {
			c.mu.Lock()
			closing, fatal, owed := c.closing, c.fatal, c.owed
			c.mu.Unlock()
			if !closing && !fatal {
				if have > 0 {
					r.problem(c, "truncated_ack", fmt.Sprintf("truncated ack at close: got %d of %d bytes where the ack for id %08d was owed; bytes %x",
						have, ackSize, c.nextAck%100000000, buf[:have]))
				}
				r.problem(c, "early_close", fmt.Sprintf("closed by the server (%v) with %d ack(s) owed, after %d answered",
					err, owed, c.nextAck-1))
				c.mu.Lock()
				c.fatal = true
				c.mu.Unlock()
				c.cond.Broadcast()
			}
			return
		}
	}
}

// flush publishes what one read answered: counters, owed, the window.
func (c *connection) flush(answered, measured int64, now time.Duration) {
	if answered == 0 {
		return
	}
	r := c.r
	c.mu.Lock()
	c.owed -= int(answered)
	c.mu.Unlock()
	c.cond.Signal()
	atomic.AddInt64(&r.answered, answered)
	atomic.AddInt64(&r.acked, answered)
	atomic.AddInt64(&r.windowAcked, measured)
	atomic.StoreInt64(&r.lastAck, int64(now))
}

func cpuSeconds() float64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}

func connectAll(cfg *config) ([]*net.TCPConn, error) {
	addr := net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port))
	conns := make([]*net.TCPConn, cfg.connections)
	errs := make(chan error, cfg.connections)
	limit := make(chan struct{}, 64)
	var wg sync.WaitGroup
	deadline := time.Duration(cfg.connectTimeout * 1e9)
	for i := range conns {
		wg.Add(1)
		limit <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-limit }()
			conn, err := net.DialTimeout("tcp", addr, deadline)
			if err != nil {
				errs <- err
				return
			}
			tcp := conn.(*net.TCPConn)
			tcp.SetNoDelay(true) // Nagle off: each write goes out now
			conns[i] = tcp
		}(i)
	}
	wg.Wait()
	close(errs)
	failed := 0
	var first error
	for err := range errs {
		if first == nil {
			first = err
		}
		failed++
	}
	if failed > 0 {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, fmt.Errorf("could not connect to %s: %v (%d of %d connections failed)", addr, first, failed, cfg.connections)
	}
	return conns, nil
}

func main() {
	cfg, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpdemo-loadgen:", err)
		os.Exit(2)
	}
	tcpConns, err := connectAll(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpdemo-loadgen:", err)
		os.Exit(2)
	}
	r := &run{cfg: cfg, hist: newHistogram(), byKind: map[string]int{}}
	for _, k := range errorKinds {
		r.byKind[k] = 0
	}
	if cfg.payloadSize >= 0 {
		r.payloads = [][]byte{fixedPayload(cfg.payloadSize)}
	} else {
		r.payloads = codenames(1000, rand.New(rand.NewSource(time.Now().UnixNano())))
	}
	for i, t := range tcpConns {
		c := &connection{r: r, index: i, conn: t, nextID: 1, nextAck: 1, done: make(chan struct{})}
		c.cond = sync.NewCond(&c.mu)
		r.conns = append(r.conns, c)
	}
	r.measureFrom = time.Duration(cfg.warmup * 1e9)
	r.sendEnd = time.Duration((cfg.warmup + cfg.duration) * 1e9)
	r.start = time.Now()
	cpuStart := cpuSeconds()
	var cpuMeasured float64
	cpuOnce := sync.Once{}
	markCPU := func() { cpuOnce.Do(func() { cpuMeasured = cpuSeconds() }) }
	if cfg.warmup == 0 {
		markCPU()
	} else {
		time.AfterFunc(r.measureFrom, markCPU)
	}
	var senders sync.WaitGroup
	for _, c := range r.conns {
		go c.read()
		if !cfg.openLoop() {
			senders.Add(1)
			go func(c *connection) {
				defer senders.Done()
				c.closedLoop()
			}(c)
		}
	}
	if cfg.openLoop() {
		senders.Add(1)
		go func() {
			defer senders.Done()
			r.openLoop(time.Duration(cfg.tickUs * 1e3))
		}()
	}
	stop := time.AfterFunc(r.sendEnd, func() {
		atomic.StoreInt32(&r.stopping, 1)
		for _, c := range r.conns {
			c.mu.Lock()
			c.cond.Broadcast()
			c.mu.Unlock()
		}
	})
	senders.Wait()
	stop.Stop()
	sendEnd := r.since()
	if sendEnd > r.sendEnd && cfg.openLoop() {
		sendEnd = r.sendEnd
	}
	markCPU()
	atomic.StoreInt32(&r.stopping, 1)
	// Drain: wait for the acks owed, until none has come for the drain timeout.
	quiet := time.Duration(cfg.drainTimeout * 1e9)
	for {
		owed := 0
		for _, c := range r.conns {
			c.mu.Lock()
			if !c.fatal {
				owed += c.owed
			}
			c.mu.Unlock()
		}
		if owed == 0 {
			break
		}
		last := time.Duration(atomic.LoadInt64(&r.lastAck))
		if last < sendEnd {
			last = sendEnd
		}
		if r.since()-last >= quiet {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	cpuEnd := cpuSeconds()
	for _, c := range r.conns {
		c.mu.Lock()
		owed, fatal := c.owed, c.fatal
		c.closing = true
		c.mu.Unlock()
		if owed > 0 && !fatal {
			first := make([]byte, 8)
			putID(first, c.nextAck)
			r.problem(c, "missing_acks", fmt.Sprintf("%d ack(s) missing: none arrived in the %gs drain timeout; first missing id %s",
				owed, cfg.drainTimeout, showID(first)))
		}
	}
	for _, c := range r.conns {
		c.conn.Close()
	}
	for _, c := range r.conns {
		<-c.done
	}
	end := time.Duration(atomic.LoadInt64(&r.lastAck))
	if end < sendEnd {
		end = sendEnd
	}
	report(r, cpuStart, cpuMeasured, cpuEnd, end, sendEnd)
}

func round(x float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if x < 0 {
		return -float64(int64(-x*p+0.5)) / p
	}
	return float64(int64(x*p+0.5)) / p
}

func report(r *run, cpuStart, cpuMeasured, cpuEnd float64, end, sendEnd time.Duration) {
	cfg := r.cfg
	duration := (end - r.measureFrom).Seconds()
	sendDuration := (sendEnd - r.measureFrom).Seconds()
	if duration < 0 {
		duration = 0
	}
	if sendDuration < 0 {
		sendDuration = 0
	}
	cpu := cpuEnd - cpuMeasured
	results := map[string]int64{}
	for i := range r.results {
		if n := atomic.LoadInt64(&r.results[i]); n > 0 {
			results[strconv.Itoa(i)] = n
		}
	}
	shape := "window"
	var window, rate interface{} = cfg.window, nil
	if cfg.openLoop() {
		shape, window, rate = "rate", nil, cfg.rate
	}
	var payloadSize interface{}
	if cfg.payloadSize >= 0 {
		payloadSize = cfg.payloadSize
	}
	var maxTickGap, maxLag interface{}
	if cfg.openLoop() {
		maxTickGap = round(r.maxTickGap.Seconds()*1000, 3)
		maxLag = round(r.maxLag.Seconds()*1000, 3)
	}
	per := func(n int64, s float64) float64 {
		if s <= 0 {
			return 0
		}
		return round(float64(n)/s, 1)
	}
	cpuPercent := 0.0
	if duration > 0 {
		cpuPercent = round(100*cpu/duration, 1)
	}
	sent, answered := atomic.LoadInt64(&r.sent), atomic.LoadInt64(&r.answered)
	out := map[string]interface{}{
		"client": fmt.Sprintf("%s (Go %s)", version, strings.TrimPrefix(runtime.Version(), "go")),
		"config": map[string]interface{}{
			"endpoint":        fmt.Sprintf("tcp:%s:%d", cfg.host, cfg.port),
			"connections":     cfg.connections,
			"shape":           shape,
			"window":          window,
			"rate":            rate,
			"duration_s":      cfg.duration,
			"warmup_s":        cfg.warmup,
			"payload_size":    payloadSize,
			"drain_timeout_s": cfg.drainTimeout,
			"fail_on_result":  cfg.failOnResult,
		},
		"connections": len(r.conns),
		"sent":        sent,
		"acked":       atomic.LoadInt64(&r.acked),
		"answered":    answered,
		"unanswered":  sent - answered,
		"results":     results,
		"errors": map[string]interface{}{
			"total":            r.errors,
			"by_kind":          r.byKind,
			"messages":         append([]string{}, r.messages...),
			"messages_omitted": r.errors - len(r.messages),
		},
		"warmup_s":                cfg.warmup,
		"duration_s":              round(duration, 6),
		"send_duration_s":         round(sendDuration, 6),
		"throughput_acks_per_s":   per(atomic.LoadInt64(&r.windowAcked), duration),
		"send_rate_per_s":         per(atomic.LoadInt64(&r.windowSent), sendDuration),
		"latency_us":              r.hist.latencyJSON(),
		"cpu_s":                   map[string]float64{"total": round(cpu, 3), "whole_run": round(cpuEnd-cpuStart, 3)},
		"cpu_percent_of_one_core": cpuPercent,
		"max_tick_gap_ms":         maxTickGap,
		"max_send_lag_ms":         maxLag,
		"interrupted":             false,
	}
	status := 0
	if r.errors > 0 {
		status = 1
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", " ")
		enc.Encode(out)
	} else {
		lat := r.hist.latencyJSON()
		fmt.Printf("%s: %d connections, sent %d, acked %d, errors %d\n", version, len(r.conns), sent, out["acked"], r.errors)
		fmt.Printf("throughput %.0f acks/s, send rate %.0f/s, client CPU %.1f%% of one core\n",
			out["throughput_acks_per_s"], out["send_rate_per_s"], cpuPercent)
		fmt.Printf("latency us: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f max %.0f (count %.0f)\n",
			lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"], lat["count"])
		for _, m := range r.messages {
			fmt.Println(m)
		}
	}
	os.Exit(status)
}
