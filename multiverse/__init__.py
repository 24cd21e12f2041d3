"""The `multiverse` command line: each subcommand imports its stage lazily."""
