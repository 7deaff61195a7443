"""The reference application of the example plans: the autodeploy platform of the seed runbook."""
