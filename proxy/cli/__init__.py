"""The `proxyd` command line: `main(argv) -> int`, one module per subcommand."""
