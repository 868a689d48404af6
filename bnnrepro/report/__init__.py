"""Turn the pipeline's JSON results into the tables and plots of reports/."""
