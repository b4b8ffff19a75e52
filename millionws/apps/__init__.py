"""Applications: what each path answers (``routes``), and the WebSocket applications behind it.

The interface, for every application:

* It is given a :class:`host.Host` (what it may use of the server), never the worker.
* A WebSocket application is an object with ``on_message(conn, is_text, payload) -> bytes | None`` and
  ``on_close(conn)`` (and optionally ``on_open(conn)``).
* One reply convention: ``on_message`` returns the reply to the message it was given, as framed bytes
  (or None); anything else it has to say to any connection (a reply that comes later, a push, a
  broadcast) goes through ``host.send`` or ``host.fanout``.  Everything sent to a connection reaches it in
  the order the application produced it: while a connection's input is being handled, what is sent to
  it joins that read's output, and a fan-out first sends what that output holds.
* Nothing here blocks or touches a socket.
"""
