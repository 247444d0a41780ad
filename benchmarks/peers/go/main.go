// Command server: the Go TCP servers of the seed article (Tony Bai's
// tcp-server-demo2, tcp-server-demo3 and tcp-server-demo3-with-syncpool)
// for tcpdemo's benchmark.
//
// A RECONSTRUCTION FOR BENCHMARKING, NOT THE REFERENCE IMPLEMENTATION.  It
// is rebuilt from the excerpts in the seed article (handleConn, handlePacket,
// packet.Decode with SubmitPool, the pprof listings) and the wire format of
// PROTOCOL.md, with the standard library only; the benchmark harness
// (benchmarks/servers.py, kinds go-demo3 and go-demo2) builds and runs it so
// that tcpdemo's figures can be put next to the article's servers measured
// side by side on the same machine.  Where it departs from the article:
//
//   - Metrics: sync/atomic counters instead of prometheus counters (see
//     package metrics); one atomic add per event, as Counter.Add costs.
//   - Flushing (demo3 variants): the article's demo3 writes acks into a
//     bufio.Writer and flushes only when its 4 KiB buffer fills and when the
//     connection ends (defer wbuf.Flush()).  A client that waits for its
//     last acks before closing (tcpdemo-client, a window of 1, an open loop)
//     would wait for ever.  With -flush idle (the default) the loop also
//     flushes just before the next frame would have to be read from the
//     socket: one write per batch of input, as tcpdemo writes one per read.
//     -flush end is the article's behaviour, for comparison by hand.
//   - It listens where -host and -port say (port 0: any free port), prints
//     "listening on HOST:PORT", and exits 0 on SIGTERM or SIGINT.
//
// Everything per message is the article's: frame Decode into a new buffer,
// packet Decode into a new Submit (demo2, demo3) or one from a sync.Pool
// (demo3-with-syncpool), the ack encoded with bytes.Join and written as two
// writes (length, payload), directly to the net.Conn (demo2) or through
// bufio (demo3), one goroutine per connection.  Bad input is handled as the
// reference does (PROTOCOL.md, "Bad input"): Conn or an unknown command
// closes the connection, a short Submit or length panics the whole process.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"local/frame"
	"local/metrics"
	"local/packet"
)

// handlePacket of demo2 and demo3: a new Submit per message.
func handlePacket(framePayload []byte) (ackFramePayload []byte, err error) {
	var p packet.Packet
	p, err = packet.Decode(framePayload)
	if err != nil {
		fmt.Println("handleConn: packet decode error:", err)
		return
	}

	switch p.(type) {
	case *packet.Submit:
		submit := p.(*packet.Submit)
		submitAck := &packet.SubmitAck{
			ID:     submit.ID,
			Result: 0,
		}
		ackFramePayload, err = packet.Encode(submitAck)
		if err != nil {
			fmt.Println("handleConn: packet encode error:", err)
			return nil, err
		}
		return ackFramePayload, nil
	default:
		return nil, fmt.Errorf("unknown packet type")
	}
}

// handlePacketPooled of demo3-with-syncpool: the Submit comes from
// packet.SubmitPool and goes back once its ack is built.
func handlePacketPooled(framePayload []byte) (ackFramePayload []byte, err error) {
	var p packet.Packet
	p, err = packet.DecodePooled(framePayload)
	if err != nil {
		fmt.Println("handleConn: packet decode error:", err)
		return
	}

	switch p.(type) {
	case *packet.Submit:
		submit := p.(*packet.Submit)
		submitAck := &packet.SubmitAck{
			ID:     submit.ID,
			Result: 0,
		}
		packet.SubmitPool.Put(submit)
		ackFramePayload, err = packet.Encode(submitAck)
		if err != nil {
			fmt.Println("handleConn: packet encode error:", err)
			return nil, err
		}
		return ackFramePayload, nil
	default:
		return nil, fmt.Errorf("unknown packet type")
	}
}

// handleConnDemo2: frames read from and acks written to the net.Conn itself.
func handleConnDemo2(c net.Conn) {
	metrics.ClientConnected.Inc()
	defer func() {
		metrics.ClientConnected.Dec()
		c.Close()
	}()
	frameCodec := frame.NewMyFrameCodec()

	for {
		framePayload, err := frameCodec.Decode(c)
		if err != nil {
			fmt.Println("handleConn: frame decode error:", err)
			return
		}
		metrics.ReqRecvTotal.Add(1)

		ackFramePayload, err := handlePacket(framePayload)
		if err != nil {
			fmt.Println("handleConn: handle packet error:", err)
			return
		}

		err = frameCodec.Encode(c, ackFramePayload)
		if err != nil {
			fmt.Println("handleConn: frame encode error:", err)
			return
		}
		metrics.RspSendTotal.Add(1)
	}
}

// frameBuffered reports whether rbuf holds the whole next frame, so that
// decoding it will not read from the socket.
func frameBuffered(rbuf *bufio.Reader) bool {
	n := rbuf.Buffered()
	if n < 4 {
		return false
	}
	head, _ := rbuf.Peek(4)
	return int(int32(binary.BigEndian.Uint32(head))) <= n
}

// handleConnDemo3 returns demo3's handleConn: bufio around the conn,
// handle for each packet, and the flushing policy of -flush.
func handleConnDemo3(handle func([]byte) ([]byte, error), flushIdle bool) func(net.Conn) {
	return func(c net.Conn) {
		metrics.ClientConnected.Inc()
		defer func() {
			metrics.ClientConnected.Dec()
			c.Close()
		}()
		frameCodec := frame.NewMyFrameCodec()
		rbuf := bufio.NewReader(c)
		wbuf := bufio.NewWriter(c)
		defer wbuf.Flush()

		for {
			// Not in the article (see the header): flush before waiting on the socket.
			if flushIdle && wbuf.Buffered() > 0 && !frameBuffered(rbuf) {
				if err := wbuf.Flush(); err != nil {
					fmt.Println("handleConn: flush error:", err)
					return
				}
			}
			framePayload, err := frameCodec.Decode(rbuf)
			if err != nil {
				fmt.Println("handleConn: frame decode error:", err)
				return
			}
			metrics.ReqRecvTotal.Add(1)

			ackFramePayload, err := handle(framePayload)
			if err != nil {
				fmt.Println("handleConn: handle packet error:", err)
				return
			}

			err = frameCodec.Encode(wbuf, ackFramePayload)
			if err != nil {
				fmt.Println("handleConn: frame encode error:", err)
				return
			}
			metrics.RspSendTotal.Add(1)
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (0: any free port)")
	variant := flag.String("variant", "demo3-syncpool", "demo2, demo3 or demo3-syncpool")
	flush := flag.String("flush", "idle", "demo3: idle (before waiting for input) or end (the article's: when the buffer fills and at the end)")
	metricsAddr := flag.String("metrics", "", "serve /metrics on this host:port (default: none)")
	flag.Parse()

	if *flush != "idle" && *flush != "end" {
		fmt.Fprintln(os.Stderr, "-flush: idle or end")
		os.Exit(2)
	}
	var handleConn func(net.Conn)
	switch *variant {
	case "demo2":
		handleConn = handleConnDemo2
	case "demo3":
		handleConn = handleConnDemo3(handlePacket, *flush == "idle")
	case "demo3-syncpool":
		handleConn = handleConnDemo3(handlePacketPooled, *flush == "idle")
	default:
		fmt.Fprintln(os.Stderr, "-variant: demo2, demo3 or demo3-syncpool")
		os.Exit(2)
	}

	if *metricsAddr != "" {
		addr, err := metrics.Serve(*metricsAddr)
		if err != nil {
			fmt.Println("metrics listen error:", err)
			os.Exit(1)
		}
		fmt.Printf("metrics on %s\n", addr)
	}

	l, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Println("listen error:", err)
		os.Exit(1)
	}
	fmt.Printf("server start ok (%s, flush %s)\n", *variant, *flush)
	fmt.Printf("listening on %s\n", l.Addr())

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		os.Exit(0)
	}()

	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Println("accept error:", err)
			break
		}
		go handleConn(c)
	}
}
