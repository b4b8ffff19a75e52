// Echo peer on Go + gorilla/websocket (Debian's golang-github-gorilla-websocket-dev), for the benchmarks.
//
//	gorilla-echo --host 127.0.0.1 --port 8005 [--tls-cert FILE --tls-key FILE]
//
// Serves /echo: every message is read whole (gorilla reassembles fragments) and written back with the same
// opcode. Serves /fanout (one {"op":"subscribed"} text message, then every broadcast) and /fanout/publish
// (each text message of a publisher is written to every subscriber; gorilla has no encode-once broadcast
// except PreparedMessage, which is used, as a gorilla user would). Other paths answer 404.
// Prints "listening" on stdout once the socket accepts connections.
//
// One goroutine per connection (gorilla's model); GOMAXPROCS is left to Go, so pin the process with taskset
// to give it one core as the other peers. No compression (gorilla's default), 1 MiB read limit.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/gorilla/websocket"
)

const maxSize = 1 << 20 // 1 MiB: the same limit in all peers

var upgrader = websocket.Upgrader{
	// Accept any Origin: the load generator sends none that would match, and the other peers do not check.
	CheckOrigin:       func(r *http.Request) bool { return true },
	EnableCompression: false,
}

func echo(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered the client already
	}
	defer conn.Close()
	conn.SetReadLimit(maxSize)
	for { // bounded by the connection: ReadMessage fails once it closes
		kind, data, err := conn.ReadMessage()
		if err != nil {
			return // close frames are answered by gorilla's default close handler
		}
		if err := conn.WriteMessage(kind, data); err != nil {
			return
		}
	}
}

// subscriber: one writer lock per connection, since gorilla allows one concurrent writer.
type subscriber struct {
	mu   sync.Mutex
	conn *websocket.Conn
}

var (
	subsMu sync.Mutex
	subs   = map[*subscriber]struct{}{}
)

func fanout(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetReadLimit(maxSize)
	sub := &subscriber{conn: conn}
	sub.mu.Lock()
	err = conn.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribed"}`))
	sub.mu.Unlock()
	if err != nil {
		return
	}
	subsMu.Lock()
	subs[sub] = struct{}{}
	subsMu.Unlock()
	defer func() {
		subsMu.Lock()
		delete(subs, sub)
		subsMu.Unlock()
	}()
	for { // read only to see the close (and answer pings)
		if _, _, err := conn.ReadMessage(); err != nil {
			return
		}
	}
}

func publish(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetReadLimit(maxSize)
	for {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if kind != websocket.TextMessage {
			continue
		}
		msg, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
		if err != nil {
			return
		}
		subsMu.Lock()
		targets := make([]*subscriber, 0, len(subs))
		for s := range subs {
			targets = append(targets, s)
		}
		subsMu.Unlock()
		for _, s := range targets {
			s.mu.Lock()
			_ = s.conn.WritePreparedMessage(msg) // a failed subscriber is removed by its own reader
			s.mu.Unlock()
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8005, "port to listen on")
	certFile := flag.String("tls-cert", "", "PEM certificate (chain): serve wss://")
	keyFile := flag.String("tls-key", "", "PEM private key of --tls-cert (if not in the same file)")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/echo", echo)
	mux.HandleFunc("/fanout", fanout)
	mux.HandleFunc("/fanout/publish", publish)
	// "/" catches every other path: ServeMux answers 404 for it with NotFound.
	mux.HandleFunc("/", http.NotFound)

	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *certFile != "" {
		key := *keyFile
		if key == "" {
			key = *certFile
		}
		pair, err := tls.LoadX509KeyPair(*certFile, key)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// TLS 1.2 at least, as millionws and tlsctx.py; HTTP/1.1 only (WebSocket upgrades need it).
		ln = tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{pair},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"},
		})
	}
	fmt.Println("listening")
	if err := http.Serve(ln, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
