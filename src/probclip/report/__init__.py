"""HTML/PNG reports (the quickstart's report on the synthetic world: ``probclip.report.synthetic_report``)."""
