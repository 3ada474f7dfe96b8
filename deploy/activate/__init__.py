"""Making a system current: profile generations, switch-to-configuration, rollback steps, Home Manager."""
