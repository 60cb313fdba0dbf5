"""The provider's own balance: polled by one worker at a time, stored for every replica."""
