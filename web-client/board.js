// Link-health board for IT staff: reads /api/health (see docs/protocol.md).
