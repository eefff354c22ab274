"""Training entry points: stage 1 (VA prior), stage 2 (language injection), pipeline, comparison."""
