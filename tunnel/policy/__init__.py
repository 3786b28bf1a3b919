"""Site policy: who may connect, which addresses a client may use and reach, limits
and budgets (rates, log lines, handshakes, stream destinations)."""
