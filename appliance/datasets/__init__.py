"""Datasets: row formats, PGN import, Stockfish generation, dataset dirs, Hub publish/fetch."""
