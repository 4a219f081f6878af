"""The query layer: requests parsed into frozen query objects, compiled to SQL, rendered."""
