"""The sans-IO core: plain values in, decisions out. Imports nothing above it (checked by
import-linter in `make test`) and never mitmproxy or the OS."""
