"""A load generator for WebSocket servers that costs little per connection.

Theory of operation
-------------------
The parent process (``cli``) splits the work over ``--procs`` worker processes (``worker``), each holding fewer
than 19 000 sockets because the open-files hard limit here is 20 000 per process. A worker is one
``select.epoll`` loop over non-blocking sockets: no asyncio, no task, no per-connection timer. A connection is a
small ``__slots__`` object whose receive buffer is a shared empty ``bytes`` while nothing is pending, so an idle
connection costs a socket object, that object and a dict entry (a few hundred bytes of user space).

Client framing (``benchmarks.wscodec``, shared with the tests; the handshake in ``wsframe``) is written here
rather than borrowed because every WebSocket library keeps per-connection protocol state that would make the
client, not the server, the thing being measured.

Workers talk to the parent over one pipe each: "ready" (all of this worker's connections are settled),
"go" (start the measured window), "stop" (finish, verify, close and send the "result"). Every phase has a
deadline, and a worker whose parent disappears (pipe EOF) closes everything and exits, so no run outlives its
bounds.
"""
