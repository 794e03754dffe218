"""A chat turn, top to bottom: `runner` (checks, the one context load, storing and
streaming the turn), `base` (inputs, the one search, the tool loop), the three pipelines
`simple`, `complex` and `local`, and `persistence` (the store protocol a turn runs
against, so it runs without Postgres in tests)."""
