"""idip.data."""
