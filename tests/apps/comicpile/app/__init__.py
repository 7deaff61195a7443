"""comic-pile: the fixture application of orchestrate init's tests."""
