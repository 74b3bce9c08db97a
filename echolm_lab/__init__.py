"""The lab: what measures and demonstrates echolm-middleware (bench, soak, demo, datasets, local model servers).

The lab imports the product (`echolm_middleware`); the product never imports the lab (import-linter
checks it). Its `echolm` subcommands reach the CLI through the `echolm.commands` entry points.
"""
