"""The ranking task: ranked lists and their interactions in, ranking quality per model, day and version out."""
