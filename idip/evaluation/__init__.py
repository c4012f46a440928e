"""idip.evaluation."""
