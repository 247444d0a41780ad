// Package frame is the frame layer of the seed article's Go servers: a
// big-endian int32 total_length that counts itself, then the payload.
//
// A reconstruction for benchmarking (see ../main.go), not the reference
// implementation: the seed article names this codec (frame.NewMyFrameCodec,
// Decode from an io.Reader, Encode to an io.Writer) and its pprof listing
// shows where it allocates (a buffer per frame in Decode, binary.Write in
// Encode); the code follows that, the wire format is PROTOCOL.md's.
package frame

import (
	"encoding/binary"
	"errors"
	"io"
)

// FramePayload is one frame without its length field: a packet.
type FramePayload []byte

// StreamFrameCodec finds frames in a byte stream and writes them to one.
type StreamFrameCodec interface {
	Encode(io.Writer, FramePayload) error   // payload -> frame, written to the io.Writer
	Decode(io.Reader) (FramePayload, error) // the next frame's payload from the io.Reader
}

var ErrShortWrite = errors.New("short write")
var ErrShortRead = errors.New("short read")

type myFrameCodec struct{}

func NewMyFrameCodec() StreamFrameCodec {
	return &myFrameCodec{}
}

// Encode writes the length field, then the payload: two writes, as the
// article's codec does (a syscall each on a bare net.Conn, two copies into
// a bufio.Writer).
func (p *myFrameCodec) Encode(w io.Writer, framePayload FramePayload) error {
	var f = framePayload
	var totalLen int32 = int32(len(framePayload)) + 4

	err := binary.Write(w, binary.BigEndian, &totalLen)
	if err != nil {
		return err
	}

	n, err := w.Write([]byte(f))
	if err != nil {
		return err
	}
	if n != len(framePayload) {
		return ErrShortWrite
	}
	return nil
}

// Decode reads the length field, then exactly the rest of the frame into a
// new buffer.  Like the reference it has no bound and no check: a negative
// or short length panics (PROTOCOL.md, "Bad input").
func (p *myFrameCodec) Decode(r io.Reader) (FramePayload, error) {
	var totalLen int32
	err := binary.Read(r, binary.BigEndian, &totalLen)
	if err != nil {
		return nil, err
	}

	buf := make([]byte, totalLen-4)
	n, err := io.ReadFull(r, buf)
	if err != nil {
		return nil, err
	}
	if n != int(totalLen-4) {
		return nil, ErrShortRead
	}
	return FramePayload(buf), nil
}
