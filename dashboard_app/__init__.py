"""Web dashboard: server-rendered pages and live WebSocket updates for operators and tenants."""
