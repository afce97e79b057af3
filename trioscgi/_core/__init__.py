"""What the three sans-I/O cores (``scgi``, ``fastcgi``, ``uwsgi``) share, in one place.

Private: each core re-exports the public names it needs, so user code reaches them as
``trioscgi.scgi.RemoteProtocolError``, ``trioscgi.uwsgi.Data`` and so on. Like the
cores, it imports no trio, does no logging and reads no clock.

- ``errors``: the one ``ProtocolError`` hierarchy of all three cores.
- ``events``: the ``Event`` base of every core's events, ``NEED_DATA``, and the events
  that SCGI and uwsgi share (``Data``, ``EndOfMessage``, ``ConnectionClosed``).
- ``oneshot``: the states and the connection logic of a protocol that carries one
  request per connection, a head then a ``CONTENT_LENGTH``-framed body (SCGI, uwsgi);
  each core adds only its head parser and its response head.
"""
