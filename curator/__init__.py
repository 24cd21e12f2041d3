"""The Multiverse curator: sequential chains of thought -> Multiverse training data.

- `synth`: the built-in task (`multiverse data synth`), problems with k independent parts and a total;
- `rules`, `stages` (+ `prompts`, `backends`): structurers that plan parallel blocks over a chain's steps,
  offline by dependency analysis (`quantities`) or with a chat model in five stages;
- `plan`: the plan tree and its rendering (tags only through the core writers);
- `validate`: grammar, labels vs outlines, content preservation, path independence;
- `pipeline`: resumable JSONL curation (`multiverse curate`, `cli`); `export`: datasets + card.

Submodules are imported on use, so `multiverse data synth` does not load torch.
"""
