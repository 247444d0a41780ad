// Package metrics holds the three measures of the seed article's servers:
// connected clients, requests received, responses sent.
//
// The article counts with client_golang's prometheus.Gauge and
// prometheus.Counter.  Without the Go module proxy here (the standard
// library only), these are sync/atomic integers instead: one atomic add per
// event, comparable in cost to a prometheus Counter's Add or Inc, which is
// an atomic add too.  Serve exposes them in the Prometheus text format, as
// the article's /metrics does (on request only: the benchmark does not
// scrape it).
package metrics

import (
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
)

// Gauge is a value that goes up and down.
type Gauge struct{ v int64 }

func (g *Gauge) Inc()         { atomic.AddInt64(&g.v, 1) }
func (g *Gauge) Dec()         { atomic.AddInt64(&g.v, -1) }
func (g *Gauge) Value() int64 { return atomic.LoadInt64(&g.v) }

// Counter is a total that only goes up.
type Counter struct{ v uint64 }

func (c *Counter) Add(n uint64)  { atomic.AddUint64(&c.v, n) }
func (c *Counter) Value() uint64 { return atomic.LoadUint64(&c.v) }

var (
	ClientConnected Gauge
	ReqRecvTotal    Counter
	RspSendTotal    Counter
)

// Serve starts an HTTP server on addr with /metrics; it returns the address
// it listens on (addr may ask for port 0).
func Serve(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE tcp_server_demo_client_connected gauge\n")
		fmt.Fprintf(w, "tcp_server_demo_client_connected %d\n", ClientConnected.Value())
		fmt.Fprintf(w, "# TYPE tcp_server_demo_req_recv_total counter\n")
		fmt.Fprintf(w, "tcp_server_demo_req_recv_total %d\n", ReqRecvTotal.Value())
		fmt.Fprintf(w, "# TYPE tcp_server_demo_rsp_send_total counter\n")
		fmt.Fprintf(w, "tcp_server_demo_rsp_send_total %d\n", RspSendTotal.Value())
	})
	go func() {
		err := http.Serve(l, mux)
		if err != nil {
			fmt.Println("metrics http server failed:", err)
		}
	}()
	return l.Addr().String(), nil
}
