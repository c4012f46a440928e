"""idip.utils."""
