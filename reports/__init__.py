"""The report of a study: `data` computes tables, `figures` draws them, `build` writes the page."""
