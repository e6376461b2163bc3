"""Datasets: the procedurally generated Shapes world."""
