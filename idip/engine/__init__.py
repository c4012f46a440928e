"""idip.engine."""
