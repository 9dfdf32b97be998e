"""The TuneFleet API process: owns every write to the database."""
