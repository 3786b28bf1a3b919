"""The programs' decisions, sans-I/O (issue 11 §1): the client agent (`client.py`) and the
concentrator core (`concentrator.py`), shaped like aioquic's QuicConnection — inputs are methods
named for what happened, each taking `now`; outputs are `next_action()` and `get_timer()`.
The asyncio programs in tunnel/aio/ feed them and carry out their actions."""
