"""Protocol state on one QUIC connection: the tunnel connection over aioquic, the one
module that touches aioquic internals, stateless resets, stream mode's TCP mapping."""
