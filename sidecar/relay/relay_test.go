package relay

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/sidecar/metrics"
)

func TestCloseFor(t *testing.T) {
	for _, tc := range []struct {
		err      error
		dir      string
		code     int
		reason   string
		abnormal bool
	}{
		{&websocket.CloseError{Code: 4003, Text: "model crashed"}, metrics.FalToApp, 4003, "model crashed", false},
		{&websocket.CloseError{Code: 1000, Text: ""}, metrics.AppToFal, 1000, "", false},
		{&websocket.CloseError{Code: websocket.CloseNoStatusReceived}, metrics.FalToApp, websocket.CloseNoStatusReceived, "", false},
		{&websocket.CloseError{Code: websocket.CloseAbnormalClosure}, metrics.FalToApp, websocket.CloseInternalServerErr, "fal connection lost", true},
		{&websocket.CloseError{Code: websocket.CloseAbnormalClosure}, metrics.AppToFal, websocket.CloseGoingAway, "app connection lost", true},
		{errors.New("read: connection reset"), metrics.FalToApp, websocket.CloseInternalServerErr, "fal connection lost", true},
		{fmt.Errorf("wrapped: %w", websocket.ErrReadLimit), metrics.AppToFal, websocket.CloseMessageTooBig, "message exceeds maxRequestBytes", true},
	} {
		code, reason, abnormal := closeFor(tc.err, tc.dir)
		if code != tc.code || reason != tc.reason || abnormal != tc.abnormal {
			t.Errorf("%v (%s): got %d %q %v", tc.err, tc.dir, code, reason, abnormal)
		}
	}
}

func TestFormatClose(t *testing.T) {
	if b := formatClose(websocket.CloseNoStatusReceived, "x"); len(b) != 0 {
		t.Errorf("1005 must be an empty close frame, got %q", b)
	}
	if b := formatClose(4000, strings.Repeat("r", 300)); len(b) > 125 {
		t.Errorf("close payload %d bytes, over the 125-byte control frame limit", len(b))
	}
	if b := formatClose(4001, "bye"); string(b[2:]) != "bye" || int(b[0])<<8|int(b[1]) != 4001 {
		t.Errorf("got %v", b)
	}
}
