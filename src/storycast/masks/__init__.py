"""Character masks: pure mask math (``ops``) and mask providers (``base`` and its implementations)."""
