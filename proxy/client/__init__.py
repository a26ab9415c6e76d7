"""Client-side helpers for partners: `proxyd connect` and `proxyd relay`."""
