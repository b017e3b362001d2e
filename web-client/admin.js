// Admin page: see ../docs/protocol.md (admin API).
