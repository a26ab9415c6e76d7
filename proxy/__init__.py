"""proxyd: an authenticating (Digest) forward proxy with CIDR zones, and a jump-host manager."""

__version__ = "0.1.0"
