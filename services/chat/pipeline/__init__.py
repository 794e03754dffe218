"""The turn pipelines: simple (flash with tools), complex (flash stage, then pro), local."""
