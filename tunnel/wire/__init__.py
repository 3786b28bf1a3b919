"""The drafts' wire format: TLVs, control and stream messages, datagram framing, the
drafts' error codes, ICMP and SOCKS5 packets. Pure functions and typed values."""
