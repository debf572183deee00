"""HTML reports with plots: building blocks (html), figures (plots) and the evaluation report."""
