"""Pipelines: experiments that wait for others (edges, their reactions, the page's graph)."""
