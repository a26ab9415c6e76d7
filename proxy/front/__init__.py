"""proxyd's own front on the proxy port: the listener, and CONNECT tunnels served without
the engine (see README, Design)."""
