//! Simulated endpoint (to be written).
