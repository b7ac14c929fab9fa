"""Training side: dataset rows and splicing, PGN import, generation, trainer, evaluation, preset."""
