"""Generic page, plot and terminal helpers for the experiments' report sections and console tables. Imports no
experiment: each experiment's folder writes its own section with these, and `reproduce` puts the page together."""
