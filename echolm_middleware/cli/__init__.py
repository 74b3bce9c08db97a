"""The `echolm` command line: one subcommand per job."""
