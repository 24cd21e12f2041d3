"""What the local tools share around the core, and never ship to the Hub.

- `precision`: which dtype this machine trains and decodes in, and how fast it multiplies matrices;
- `paths`: checks of the folders and files a user names, and atomic writes;
- `jsonl`: the one JSONL reader, every error naming the file and line.

The curator, the recipes, evaluation and the CLI import it; `modeling_multiverse` does not.
"""
