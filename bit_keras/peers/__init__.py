"""The implementations users would pick instead of bit_keras, written here to race them fairly."""
