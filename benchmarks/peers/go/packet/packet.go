// Package packet is the packet layer of the seed article's Go servers: a
// command byte, then the body (Submit: 8-byte id and payload; SubmitAck:
// 8-byte id and a result byte).
//
// A reconstruction for benchmarking (see ../main.go), not the reference
// implementation.  Decode allocates a Submit per message (demo2, demo3);
// DecodePooled takes it from SubmitPool, as tcp-server-demo3-with-syncpool
// does in the article.
package packet

import (
	"bytes"
	"fmt"
	"sync"
)

const (
	CommandConn   = iota + 0x01 // 0x01
	CommandSubmit               // 0x02
)

const (
	CommandConnAck   = iota + 0x80 // 0x80
	CommandSubmitAck               // 0x81
)

// Packet is one decoded message.
type Packet interface {
	Decode([]byte) error     // []byte -> struct
	Encode() ([]byte, error) // struct -> []byte
}

type Submit struct {
	ID      string
	Payload []byte
}

// Decode panics on a body shorter than the id, as the reference does.
func (s *Submit) Decode(pktBody []byte) error {
	s.ID = string(pktBody[:8])
	s.Payload = pktBody[8:]
	return nil
}

func (s *Submit) Encode() ([]byte, error) {
	return bytes.Join([][]byte{[]byte(s.ID[:8]), s.Payload}, nil), nil
}

type SubmitAck struct {
	ID     string
	Result uint8
}

func (s *SubmitAck) Decode(pktBody []byte) error {
	s.ID = string(pktBody[0:8])
	s.Result = uint8(pktBody[8])
	return nil
}

func (s *SubmitAck) Encode() ([]byte, error) {
	return bytes.Join([][]byte{[]byte(s.ID[:8]), {s.Result}}, nil), nil
}

// SubmitPool holds Submits for reuse (tcp-server-demo3-with-syncpool).
var SubmitPool = sync.Pool{
	New: func() interface{} {
		return &Submit{}
	},
}

// Decode a frame payload into a new packet (demo2, demo3).  Conn and
// ConnAck decode to nil: the server then closes the connection.
func Decode(packet []byte) (Packet, error) {
	commandID := packet[0]
	pktBody := packet[1:]
	switch commandID {
	case CommandConn:
		return nil, nil
	case CommandConnAck:
		return nil, nil
	case CommandSubmit:
		s := Submit{}
		err := s.Decode(pktBody)
		if err != nil {
			return nil, err
		}
		return &s, nil
	case CommandSubmitAck:
		s := SubmitAck{}
		err := s.Decode(pktBody)
		if err != nil {
			return nil, err
		}
		return &s, nil
	default:
		return nil, fmt.Errorf("unknown commandID [%d]", commandID)
	}
}

// DecodePooled is Decode with the Submit taken from SubmitPool
// (tcp-server-demo3-with-syncpool); the caller puts it back.
func DecodePooled(packet []byte) (Packet, error) {
	commandID := packet[0]
	pktBody := packet[1:]
	switch commandID {
	case CommandConn:
		return nil, nil
	case CommandConnAck:
		return nil, nil
	case CommandSubmit:
		s := SubmitPool.Get().(*Submit)
		err := s.Decode(pktBody)
		if err != nil {
			return nil, err
		}
		return s, nil
	case CommandSubmitAck:
		s := SubmitAck{}
		err := s.Decode(pktBody)
		if err != nil {
			return nil, err
		}
		return &s, nil
	default:
		return nil, fmt.Errorf("unknown commandID [%d]", commandID)
	}
}

// Encode a packet into a frame payload: the command byte, then the body.
func Encode(p Packet) ([]byte, error) {
	var commandID uint8
	var pktBody []byte
	var err error

	switch t := p.(type) {
	case *Submit:
		commandID = CommandSubmit
		pktBody, err = p.Encode()
		if err != nil {
			return nil, err
		}
	case *SubmitAck:
		commandID = CommandSubmitAck
		pktBody, err = p.Encode()
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown type [%s]", t)
	}
	return bytes.Join([][]byte{{commandID}, pktBody}, nil), nil
}
