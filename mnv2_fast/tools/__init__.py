"""Tools that serve the CLI, benchmarks and checks: never imported by the runtime."""
