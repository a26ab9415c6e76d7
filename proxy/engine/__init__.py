"""The engine adapter: the only package that imports mitmproxy (checked in `make test`)."""
